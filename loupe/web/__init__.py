"""The web layer: Flask routes, hooks and error handlers around the engine. The only importer of Flask."""
