"""espmeter exporter: IPFIX messages (python-ipfix), templates, transports, collector dictionaries."""
