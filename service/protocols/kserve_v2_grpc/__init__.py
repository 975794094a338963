"""KServe V2 over gRPC: the protocol's messages (``grpc_predict_v2.proto`` and its generated modules), the codec
(messages <-> inference inputs and outputs) and the servicer; served by service/front_door/grpc_server.py."""
