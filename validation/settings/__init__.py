"""Run settings: ``profiles`` (tiny / quick / full runs and the curation profiles) and ``config`` (the checked
configuration: noise specs, upgrades of older configurations)."""
