"""Namespace tests: real TAPs, sockets, bridges, OVS, kernel vxlan, always in namespaces the tests create."""
