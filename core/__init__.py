"""skipstep core: everything that is neither HTTP nor Celery."""
