#!/usr/bin/env python3
"""An independent OTLP/HTTP metrics receiver for the demo.

It decodes requests with the OpenTelemetry project's own Python protobuf bindings
(`opentelemetry-proto`), not with dbcollector's code, and writes a summary of what
arrived as JSON when it stops (SIGTERM or SIGINT).
"""

import gzip
import json
import signal
import sys
import threading
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

LOCK = threading.Lock()
STATE = {
    "requests": 0,
    "points": 0,
    "workers": set(),
    "metrics": defaultdict(lambda: {"points": 0, "unit": "", "kind": "", "last": None}),
    "resources": {},
}


def any_value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        if self.path != "/v1/metrics":
            self.send_error(404)
            return
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportMetricsServiceRequest()
        request.ParseFromString(body)
        with LOCK:
            STATE["requests"] += 1
            STATE["workers"].add(self.headers.get("x-dbcollector-worker", "?"))
            for rm in request.resource_metrics:
                attrs = {kv.key: any_value(kv.value) for kv in rm.resource.attributes}
                STATE["resources"][attrs.get("dbcollector.target", "?")] = attrs
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        kind = m.WhichOneof("data")
                        points = getattr(m, kind).data_points
                        entry = STATE["metrics"][m.name]
                        entry["points"] += len(points)
                        entry["unit"] = m.unit
                        entry["kind"] = kind
                        if points:
                            p = points[-1]
                            entry["last"] = getattr(p, p.WhichOneof("value"))
                        STATE["points"] += len(points)
        out = ExportMetricsServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


def main():
    port = int(sys.argv[1])
    summary_path = sys.argv[2]
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)

    def stop(*_):
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve_forever()
    with LOCK:
        summary = {
            "requests": STATE["requests"],
            "points": STATE["points"],
            "workers": sorted(STATE["workers"]),
            "resources": STATE["resources"],
            "metrics": dict(sorted(STATE["metrics"].items())),
        }
    with open(summary_path, "w") as f:
        json.dump(summary, f, indent=1, default=str)


if __name__ == "__main__":
    main()
