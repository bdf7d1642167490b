"""The network: SAM backbones, adapters, prompt generators, class-labelled decoding, AutoPromptSAM."""
