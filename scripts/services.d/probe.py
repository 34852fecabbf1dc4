#!/usr/bin/env python3
"""Health probes and tiny clients for scripts/services (standard library only).

  probe.py kafka HOST PORT                 ApiVersions v0 request; ok when error_code == 0
  probe.py cql HOST PORT                   CQL v4 STARTUP -> READY, then
                                           SELECT release_version FROM system.local -> RESULT
  probe.py cql-query HOST PORT 'CQL'       run one statement, print rows (text columns only)
  probe.py cluster-id                      print a new Kafka cluster id (base64url UUID)
  probe.py s3 METHOD PATH [FILE|-]         SigV4-signed request against $S3_ENDPOINT with
                                           $AWS_ACCESS_KEY_ID / $AWS_SECRET_ACCESS_KEY / $AWS_REGION;
                                           prints the body (GET) or status; exit 0 on 2xx
  probe.py s3-ready                        signed ListBuckets answers 200
  probe.py s3-mkbucket BUCKET              create the bucket unless it exists (idempotent)
Exit status 0 = success, 1 = failure (reason on stderr).
"""
import base64, datetime, hashlib, hmac, os, socket, struct, sys, urllib.parse, uuid
import http.client

TIMEOUT = float(os.environ.get("PROBE_TIMEOUT", "5"))


def fail(msg):
    print(msg, file=sys.stderr)
    sys.exit(1)


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed after %d of %d bytes" % (len(buf), n))
        buf += chunk
    return buf


# ---------------------------------------------------------------- Kafka
def kafka(host, port):
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as s:
        client = b"rankmysteps-probe"
        body = struct.pack(">hhih", 18, 0, 4242, len(client)) + client  # ApiVersions v0
        s.sendall(struct.pack(">i", len(body)) + body)
        (size,) = struct.unpack(">i", recv_exact(s, 4))
        resp = recv_exact(s, size)
        corr, err = struct.unpack(">ih", resp[:6])
        if corr != 4242:
            fail("kafka: unexpected correlation id %d" % corr)
        if err != 0:
            fail("kafka: ApiVersions error_code %d" % err)
        (n,) = struct.unpack(">i", resp[6:10])
        print("kafka: ApiVersions ok (%d APIs)" % n)


# ---------------------------------------------------------------- CQL (native protocol v4)
def cql_frame(opcode, body, stream=1):
    return struct.pack(">BBhBi", 0x04, 0, stream, opcode, len(body)) + body


def cql_read(sock):
    version, flags, stream, opcode, length = struct.unpack(">BBhBi", recv_exact(sock, 9))
    return opcode, recv_exact(sock, length)


def cql_string(s):
    b = s.encode()
    return struct.pack(">H", len(b)) + b


def cql_error(body):
    code = struct.unpack(">i", body[:4])[0]
    (ln,) = struct.unpack(">H", body[4:6])
    return "error 0x%04x: %s" % (code, body[6:6 + ln].decode(errors="replace"))


def cql_session(host, port):
    s = socket.create_connection((host, int(port)), timeout=TIMEOUT)
    s.sendall(cql_frame(0x01, struct.pack(">H", 1) + cql_string("CQL_VERSION") + cql_string("3.0.0")))
    op, body = cql_read(s)
    if op == 0x00:
        fail("cql: STARTUP " + cql_error(body))
    if op != 0x02:
        fail("cql: expected READY (0x02) after STARTUP, got opcode 0x%02x" % op)
    return s


def cql_query(sock, query):
    q = query.encode()
    body = struct.pack(">i", len(q)) + q + struct.pack(">HB", 0x0001, 0)  # consistency ONE, no flags
    sock.sendall(cql_frame(0x07, body, stream=2))
    op, body = cql_read(sock)
    if op == 0x00:
        fail("cql: QUERY " + cql_error(body))
    if op != 0x08:
        fail("cql: expected RESULT (0x08), got opcode 0x%02x" % op)
    return parse_result(body)


def parse_result(body):
    (kind,) = struct.unpack(">i", body[:4])
    if kind != 2:  # not Rows: Void / SetKeyspace / SchemaChange
        return kind, [], []
    pos = 4
    flags, ncols = struct.unpack(">ii", body[pos:pos + 8]); pos += 8
    if flags & 0x0002:  # has_more_pages: paging state
        (ln,) = struct.unpack(">i", body[pos:pos + 4]); pos += 4 + max(ln, 0)
    names = []
    if not flags & 0x0004:  # metadata present
        def rd_str(p):
            (ln,) = struct.unpack(">H", body[p:p + 2])
            return body[p + 2:p + 2 + ln].decode(), p + 2 + ln
        if flags & 0x0001:
            _, pos = rd_str(pos); _, pos = rd_str(pos)
        for _ in range(ncols):
            if not flags & 0x0001:
                _, pos = rd_str(pos); _, pos = rd_str(pos)
            name, pos = rd_str(pos)
            names.append(name)
            pos = skip_type(body, pos)
    (nrows,) = struct.unpack(">i", body[pos:pos + 4]); pos += 4
    rows = []
    for _ in range(nrows):
        row = []
        for _ in range(ncols):
            (ln,) = struct.unpack(">i", body[pos:pos + 4]); pos += 4
            row.append(None if ln < 0 else body[pos:pos + ln]); pos += max(ln, 0)
        rows.append(row)
    return kind, names, rows


def skip_type(body, pos):
    (tid,) = struct.unpack(">H", body[pos:pos + 2]); pos += 2
    if tid == 0x0000:  # custom: string
        (ln,) = struct.unpack(">H", body[pos:pos + 2]); return pos + 2 + ln
    if tid in (0x0020, 0x0022):  # list, set
        return skip_type(body, pos)
    if tid == 0x0021:  # map
        return skip_type(body, skip_type(body, pos))
    if tid == 0x0030:  # UDT
        for _ in range(2):
            (ln,) = struct.unpack(">H", body[pos:pos + 2]); pos += 2 + ln
        (n,) = struct.unpack(">H", body[pos:pos + 2]); pos += 2
        for _ in range(n):
            (ln,) = struct.unpack(">H", body[pos:pos + 2]); pos += 2 + ln
            pos = skip_type(body, pos)
        return pos
    if tid == 0x0031:  # tuple
        (n,) = struct.unpack(">H", body[pos:pos + 2]); pos += 2
        for _ in range(n):
            pos = skip_type(body, pos)
        return pos
    return pos


def cql(host, port):
    with cql_session(host, port) as s:
        kind, names, rows = cql_query(s, "SELECT release_version FROM system.local")
        if kind != 2 or not rows:
            fail("cql: no row from system.local")
        print("cql: ready, release_version %s" % rows[0][0].decode())


def cql_run(host, port, query):
    with cql_session(host, port) as s:
        kind, names, rows = cql_query(s, query)
        if names:
            print(" | ".join(names))
        for r in rows:
            print(" | ".join("null" if v is None else v.decode(errors="replace") if all(32 <= c < 127 for c in v) else "0x" + v.hex() for v in r))
        if kind != 2:
            print("ok (result kind %d)" % kind)


# ---------------------------------------------------------------- S3 (AWS Signature V4)
def s3_request(method, path, body=b"", query=""):
    endpoint = os.environ.get("RANKMYSTEPS_S3_ENDPOINT") or os.environ.get("S3_ENDPOINT") or "http://127.0.0.1:9000"
    access = os.environ["AWS_ACCESS_KEY_ID"]
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    region = os.environ.get("AWS_REGION", "us-east-1")
    u = urllib.parse.urlsplit(endpoint)
    host = u.netloc
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date, date = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    payload_hash = hashlib.sha256(body).hexdigest()
    canon_uri = urllib.parse.quote(path, safe="/-_.~")
    canon_query = "&".join(
        "%s=%s" % (urllib.parse.quote(k, safe="-_.~"), urllib.parse.quote(v, safe="-_.~"))
        for k, v in sorted(urllib.parse.parse_qsl(query, keep_blank_values=True)))
    headers = {"host": host, "x-amz-content-sha256": payload_hash, "x-amz-date": amz_date}
    signed = ";".join(sorted(headers))
    canon_headers = "".join("%s:%s\n" % (k, headers[k]) for k in sorted(headers))
    creq = "\n".join([method, canon_uri, canon_query, canon_headers, signed, payload_hash])
    scope = "%s/%s/s3/aws4_request" % (date, region)
    sts = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(creq.encode()).hexdigest()])
    key = ("AWS4" + secret).encode()
    for part in (date, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    sig = hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = "AWS4-HMAC-SHA256 Credential=%s/%s, SignedHeaders=%s, Signature=%s" % (access, scope, signed, sig)
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=TIMEOUT)
    conn.request(method, canon_uri + ("?" + canon_query if canon_query else ""), body=body, headers=headers)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, data


def s3(method, path, src=None):
    body = b""
    if src == "-":
        body = sys.stdin.buffer.read()
    elif src:
        with open(src, "rb") as f:
            body = f.read()
    status, data = s3_request(method, path, body)
    if 200 <= status < 300:
        if method == "GET":
            sys.stdout.buffer.write(data)
        else:
            print("%s %s -> %d" % (method, path, status))
        return
    fail("%s %s -> HTTP %d %s" % (method, path, status, data.decode(errors="replace")[:400]))


def s3_ready():
    status, data = s3_request("GET", "/")
    if status != 200:
        fail("s3: ListBuckets -> HTTP %d %s" % (status, data.decode(errors="replace")[:300]))
    print("s3: ListBuckets ok")


def s3_mkbucket(bucket):
    status, data = s3_request("HEAD", "/" + bucket)
    if status == 200:
        print("s3: bucket %s exists" % bucket)
        return
    status, data = s3_request("PUT", "/" + bucket)
    if status == 200 or b"BucketAlreadyOwnedByYou" in data:
        print("s3: bucket %s created" % bucket)
        return
    fail("s3: create bucket %s -> HTTP %d %s" % (bucket, status, data.decode(errors="replace")[:300]))


def main(argv):
    if len(argv) < 2:
        fail(__doc__)
    cmd, args = argv[1], argv[2:]
    try:
        if cmd == "kafka":
            kafka(*args)
        elif cmd == "cql":
            cql(*args)
        elif cmd == "cql-query":
            cql_run(*args)
        elif cmd == "cluster-id":
            while True:
                cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
                if not cid.startswith("-"):
                    print(cid)
                    return
        elif cmd == "s3":
            s3(*args)
        elif cmd == "s3-ready":
            s3_ready()
        elif cmd == "s3-mkbucket":
            s3_mkbucket(*args)
        else:
            fail("unknown probe %s\n%s" % (cmd, __doc__))
    except (OSError, ConnectionError, struct.error, KeyError) as e:
        fail("%s: %s: %s" % (cmd, type(e).__name__, e))


if __name__ == "__main__":
    main(sys.argv)
