package jobs

// WithoutJobs returns Tables on the same database whose IngestEvents stores events
// without their jobs, for tests that enqueue the jobs through River's client instead.
func (t *Tables) WithoutJobs() *Tables { return &Tables{db: t.db} }
