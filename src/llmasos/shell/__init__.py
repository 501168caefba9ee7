"""The OS commands of the `llmasos` shell: serve, run, ps, kill, renice, top, apps, models, audit, keys."""
