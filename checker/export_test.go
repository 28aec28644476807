package checker

// WaitTokens blocks until the token cache has applied earlier Sets, so a
// test's next Check with the same token is a token cache hit.
func (c *Checker) WaitTokens() { c.tcache.Wait() }
