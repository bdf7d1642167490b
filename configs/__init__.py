"""The bundled trainer presets (``*.yaml``), shipped as package data and read by
:func:`pipeline.trainer_config.preset_path` through :mod:`importlib.resources`."""
