"""Keep-alive Encrypt client of tests/bench/instr-encrypt.sh: N requests, prints how many got 200."""
import sys, http.client
sys.path.insert(0, sys.argv[1])
import key_pb2 as pb
port, n, key, tok = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], open(sys.argv[5]).read().strip()
c = http.client.HTTPConnection("127.0.0.1", port)
body = pb.EncryptRequest(key_id=key, plaintext=b"x" * 256, encryption_context={"conv": "42"}).SerializeToString()
h = {"Content-Type": "application/protobuf", "Authorization": "Bearer " + tok}
ok = 0
for i in range(n):
    c.request("POST", "/twirp/custos.v1.KeyService/Encrypt", body, h)
    r = c.getresponse(); r.read()
    ok += r.status == 200
print(ok)
