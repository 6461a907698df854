"""edgeloop edge agent: protocol, runtimes, decoders, camera loop and update state machine.

Installs light (`pip install edgeloop[agent]`): never imports torch, fleet_server or model_zoo.
"""

__version__ = "0.1.0"
