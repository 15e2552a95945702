"""The app on top of the engine and the widgets: cached demos, the Voila entry point and the CLI."""
