package broker

// OutboundCap returns the capacity of the outbound queue of the client
// with clientID (connected or with a persistent session), and false if the
// broker has no such client.
func OutboundCap(s *Server, clientID string) (int, bool) {
	cl, ok := s.mq.Clients.Get(clientID)
	if !ok {
		return 0, false
	}
	return cl.OutboundCapacity(), true
}

// Flush waits until every change the broker made so far is in its Store
// (for tests of what a crash keeps of changes written lazily).
func Flush(s *Server) error {
	l := s.ledger
	l.mu.Lock()
	w := l.pendingWait()
	l.mu.Unlock()
	l.wake()
	return await(w)
}
