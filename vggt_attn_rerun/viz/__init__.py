"""The only layer that imports rerun: entity paths, colormaps, blueprints, sinks, logging."""
