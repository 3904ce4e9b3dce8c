"""The sweeper server: REST API over the sweep database, the only owner of that database.

Build an app with `api.app.create_app(Settings(...))`; run one with `api.server.serve` or
`api.server.start_in_thread`.
"""
