"""The wire protocols, each a thin codec over ``service.inference``: native ``/predict``, KServe V2, TF Serving.

Each module has a ``blueprint``, the ``PATH_PREFIX`` its routes live under (which picks its error shape and its
``protocol`` metric label) and ``error_body(code, message)``.
"""

from service.protocols import kserve_v2, native, tf_serving

PROTOCOLS = (kserve_v2, tf_serving, native)  # most specific prefix first; native ("/") takes the rest


def protocol_of(path: str):
    return next(protocol for protocol in PROTOCOLS if path.startswith(protocol.PATH_PREFIX))
