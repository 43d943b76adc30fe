"""The pure core: models, definitions and the pure engine. No Trio, no I/O, no clock."""
