//! Sends batches to an OTLP receiver over gRPC or HTTP/protobuf, with retry and a bounded queue.
