"""A passive listener on the LAN segment: joins the discovery group, writes each datagram it
hears (hex) and its source to OUT, one per line, until killed.

    python3 spy.py GROUP PORT LOCAL_ADDR OUT
"""
import socket
import struct
import sys

group, port, local, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", port))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
             struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton(local)))
with open(out, "a", buffering=1) as f:
    while True:
        data, src = s.recvfrom(2048)
        f.write("%s %s\n" % (src[0], data.hex()))
