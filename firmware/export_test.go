package firmware

// FileBlobs returns the default Blobs, files under dir/blobs, for tests
// that wrap it.
func FileBlobs(dir string) (Blobs, error) { return openFileBlobs(dir) }
