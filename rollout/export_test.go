package rollout

// PlanBatches exposes planBatches to the black-box tests.
var PlanBatches = planBatches
