//go:build !unix

package main

import "os"

// ttyColumns is 0 where the terminal size is not read: $COLUMNS or the
// default width applies.
func ttyColumns(*os.File) int { return 0 }
