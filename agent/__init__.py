"""espmeter agent: capture, decode, meter ESP sequence numbers, pair SAs, schedule exports."""
