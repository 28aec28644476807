package main

import (
	"context"
	"errors"
	"io"
)

func dev(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return errors.New("not built yet")
}

func auditBridge(ctx context.Context, args []string, stderr io.Writer) error {
	return errors.New("not built yet")
}
