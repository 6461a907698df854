"""edgeloop fleet server: API, database, MQTT bridge, model registry, CLI `edgeloop`.

Nothing happens at import: build the app with `fleet_server.app.create_app(settings)`.
"""
