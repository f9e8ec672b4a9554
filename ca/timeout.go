package ca

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"

	"github.com/edgeagent/edgeagent/enroll/est"
)

// CodeClientTimeout is the code of a request the client did not finish: it
// went away (its connection closed, the request context was cancelled) or
// sent its body too slowly (the body read deadline passed). It is audited
// as that, not as an internal error: nothing failed on the CA's side.
const CodeClientTimeout est.Code = "client_timeout" // 408, usually read by no one

// clientTimeout decides whether a failed request failed because of its
// client: ctxErr is the request context's error (non-nil once the client
// went away), err what the request failed with. A decision the CA had
// already made (a refusal under 500) stands, whatever the client did
// afterwards; an error caused by the client leaving or stalling becomes a
// 408 client_timeout. nil means the error is not the client's doing.
func clientTimeout(ctxErr, err error) *Error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) && e.Status < 500 {
		return nil
	}
	var reason string
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		reason = "the client did not send its request in time (body read deadline): " + err.Error()
	case errors.Is(err, io.ErrUnexpectedEOF):
		reason = "the client closed its connection before the request body was complete: " + err.Error()
	case ctxErr != nil, errors.Is(err, context.Canceled):
		reason = "the client went away before the answer: " + err.Error()
	default:
		return nil
	}
	return &Error{Status: http.StatusRequestTimeout, Code: CodeClientTimeout,
		Msg: "the request was not completed in time: send it again", Reason: reason}
}
