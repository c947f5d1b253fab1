package plannerrpc

// OnPartSent makes c call f after each part of a create sent in parts is
// staged on the holder, with the part's index.
func OnPartSent(c *Client, f func(part int)) { c.partSent = f }

// OnCloseBegun makes s's Close call f once it answers new requests
// "moved", before it drains its subscription.
func OnCloseBegun(s *Server, f func()) { s.closeBegun = f }
