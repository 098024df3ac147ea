# DNS stand-ins for `cargo xtask exit-lab` (run with python3; no third-party modules).
#   serve ADDR ANSWER LOG    answer every A query on ADDR:53 with ANSWER; log each asker's IP
#   forward ADDR UPSTREAM    pass queries on ADDR:53 to UPSTREAM:53 and answers back (dnsmasq's part)
import socket
import sys


def serve(addr, answer, log):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, 53))
    ip = socket.inet_aton(answer)
    while True:
        q, peer = s.recvfrom(512)
        if len(q) < 12:
            continue
        with open(log, "a") as f:
            f.write(peer[0] + "\n")
        end = q.index(0, 12) + 5
        head = q[:2] + b"\x81\x80" + q[4:6] + b"\x00\x01\x00\x00\x00\x00"
        rr = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + ip
        s.sendto(head + q[12:end] + rr, peer)


def forward(addr, upstream):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, 53))
    while True:
        q, peer = s.recvfrom(512)
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.settimeout(3)
        try:
            u.sendto(q, (upstream, 53))
            a, _ = u.recvfrom(4096)
            s.sendto(a, peer)
        except OSError:
            pass
        finally:
            u.close()


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        forward(sys.argv[2], sys.argv[3])
