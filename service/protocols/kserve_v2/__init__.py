"""KServe V2 / Open Inference Protocol, REST (``/v2``)."""
