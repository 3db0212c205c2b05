"""What every folder of the project may use: retries with backoff, and atomic file writes.

`common` imports nothing of the project, so `model`, `tasks`, `sweeper` and `analysis` can all import it without
an import cycle and without pulling in each other (importing `tasks.x` would first run `tasks/__init__`, which
loads every data task). See ARCHITECTURE.md.
"""
