"""The Celery side: the app's configuration, the worker/beat app and its tasks, the job
computations, the ``slipway-app worker``/``beat`` launcher and the task outcome counters.

Importing this package builds nothing: the web app imports ``celery_config`` (to publish)
and ``task_metrics`` (to export) without creating the worker's Celery app.
"""
