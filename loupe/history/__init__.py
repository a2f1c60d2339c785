"""The history: one record per request, its images content-addressed on disk, SQL through SQLAlchemy."""
