package rollout

// PlanBatches exposes planBatches to the black-box tests.
var PlanBatches = planBatches

// Live reports whether rollout id is held in memory (active or not yet
// settled), for tests that must reach the stored-rollout paths.
func (p *Planner) Live(id string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.runs[id] != nil
}
