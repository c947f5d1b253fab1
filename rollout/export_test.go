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

// WaveSize is how many devices a pass notifies per wave with
// Config.WriteConcurrency writeConcurrency: a pause or abort takes effect
// after the wave in progress.
func WaveSize(writeConcurrency int) int { return waveWrites * writeConcurrency }
