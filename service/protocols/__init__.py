"""The wire protocols, each a pure codec (``codec.py``: bytes and JSON <-> inference inputs and outputs, no
Flask) plus thin routes (``routes.py``: a blueprint built from the app's state): native ``/predict``, KServe V2,
TF Serving.

Each codec names the protocol (``NAME``, its ``protocol`` metric label), the ``PATH_PREFIX`` its routes live
under (which picks its error shape) and its ``error_body(code, message)``.
"""

from service.protocols.kserve_v2 import codec as kserve_v2
from service.protocols.native import codec as native
from service.protocols.tf_serving import codec as tf_serving

PROTOCOLS = (kserve_v2, tf_serving, native)  # most specific prefix first; native ("/") takes the rest


def protocol_of(path: str):
    """The codec module of the protocol a path belongs to."""
    return next(protocol for protocol in PROTOCOLS if path.startswith(protocol.PATH_PREFIX))
