"""Membership of a net on etcd: hosts join and leave a mesh by themselves (issue 12).

store.py: our small Store interface and its errors; etcd.py: the aetcd implementation (the only
importer of aetcd); model.py: the key layout and JSON values (pure); keeper.py: Membership, the
state machine the daemon runs, and the MemberSink protocol the service implements.
"""
