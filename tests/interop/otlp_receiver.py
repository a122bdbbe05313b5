"""A real OTLP/HTTP receiver for the tracing tests.

Listens on 127.0.0.1 (an ephemeral port, printed as `listening PORT`),
decodes every export with the official OpenTelemetry protobuf definitions
(opentelemetry-proto) and prints one JSON line per span and per histogram
data point, so the test reads exactly what tessera sent.
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


def value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def attributes(kvs):
    return {kv.key: value(kv.value) for kv in kvs}


def emit(record):
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.path == "/v1/traces":
            req = ExportTraceServiceRequest.FromString(body)
            for rs in req.resource_spans:
                resource = attributes(rs.resource.attributes)
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        emit({
                            "signal": "span",
                            "service": resource.get("service.name"),
                            "scope": ss.scope.name,
                            "trace_id": s.trace_id.hex(),
                            "span_id": s.span_id.hex(),
                            "parent_span_id": s.parent_span_id.hex(),
                            "trace_state": s.trace_state,
                            "name": s.name,
                            "kind": s.kind,
                            "start_ns": s.start_time_unix_nano,
                            "end_ns": s.end_time_unix_nano,
                            "attributes": attributes(s.attributes),
                            "status": s.status.code,
                            "status_message": s.status.message,
                        })
            reply = ExportTraceServiceResponse()
        elif self.path == "/v1/metrics":
            req = ExportMetricsServiceRequest.FromString(body)
            for rm in req.resource_metrics:
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        if m.WhichOneof("data") != "histogram":
                            continue
                        for p in m.histogram.data_points:
                            emit({
                                "signal": "metric",
                                "name": m.name,
                                "unit": m.unit,
                                "attributes": attributes(p.attributes),
                                "count": p.count,
                                "bounds": list(p.explicit_bounds),
                            })
            reply = ExportMetricsServiceResponse()
        else:
            self.send_error(404)
            return
        out = reply.SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    emit({"signal": "listening", "port": server.server_address[1]})
    # Ends when the test closes our stdin or kills us.
    server.serve_forever()


if __name__ == "__main__":
    main()
