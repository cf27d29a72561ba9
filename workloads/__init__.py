"""Sample workloads an edge site runs: one small standard-library HTTP service per client kind.

``inference`` (mobile clients), ``sensor`` (IoT clients) and ``game_state`` (gaming clients) each
answer ``GET /healthz`` and ``POST /invoke``; ``server`` holds the HTTP plumbing they share.
Nothing here imports the orchestrator's own packages.
"""
