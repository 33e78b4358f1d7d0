"""Airflow UI views of generated videos: a task-instance tab and galleries (see :mod:`.plugin`)."""
