"""Celery tasks: thin glue that loads inputs from the database and blob store, calls
``workers.engine`` and writes results and job status back."""
