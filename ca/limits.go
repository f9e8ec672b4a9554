package ca

import (
	"errors"
	"log/slog"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Connection and request limits of the EST server. A connection over a
// limit is closed as soon as it is accepted, before the TLS handshake
// costs anything; an enrollment over the in-flight limit gets 503 with
// Retry-After.
const (
	// DefaultMaxConnsPerPeer bounds the connections one IP address holds
	// open: a site behind one NAT address renews through this many at once.
	DefaultMaxConnsPerPeer = 64
	// DefaultMaxConns bounds all connections, well under the file
	// descriptors Go raises its limit to.
	DefaultMaxConns = 4096
	// maxInFlight bounds enrollments being read, checked and signed at
	// once; beyond it the CPU is saturated anyway.
	maxInFlight = 256
	// Timeouts: the TLS handshake and the request header must arrive
	// within headerTimeout, an enrollment body within bodyTimeout of its
	// headers; an idle keep-alive connection is closed after idleTimeout.
	headerTimeout = 10 * time.Second
	bodyTimeout   = 10 * time.Second
	idleTimeout   = 30 * time.Second
)

// Token guessing policy. A peer gets peerFreeGuesses failed token
// checks, then waits 1 s, 2 s, 4 s ... up to peerMaxBackoff between
// attempts: about 25 guesses in its first hour and 12 an hour after that.
// A token id gets more (several devices may share a claim token, and its
// id is not secret) and waits at most tokenMaxBackoff, so that someone who
// knows an id can delay that token's enrollment by a minute at a time but
// not lock it out. Secrets carry 256 bits: the limits are for the log and
// the CPU, not for the odds.
const (
	peerFreeGuesses  = 5
	peerMaxBackoff   = 5 * time.Minute
	tokenFreeGuesses = 10
	tokenMaxBackoff  = time.Minute
)

// limitListener caps connections per peer IP and in total, and logs file
// descriptor exhaustion at error level (net/http only retries it, logging
// at the level of its ErrorLog).
type limitListener struct {
	net.Listener
	perPeer, total int
	log            *slog.Logger

	mu     sync.Mutex
	active map[string]int
	n      int

	refused atomic.Int64 // connections closed at accept for a limit
	fdMu    sync.Mutex
	fdLast  time.Time
	fdSince int
}

func newLimitListener(ln net.Listener, perPeer, total int, log *slog.Logger) *limitListener {
	return &limitListener{Listener: ln, perPeer: perPeer, total: total, log: log, active: make(map[string]int)}
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			if isFDExhaustion(err) {
				l.logFDExhaustion(err)
			}
			return nil, err
		}
		ip := peerIP(c.RemoteAddr().String())
		if !l.acquire(ip) {
			l.refused.Add(1)
			c.Close()
			continue
		}
		return &limitedConn{Conn: c, release: func() { l.release(ip) }}, nil
	}
}

func (l *limitListener) acquire(ip string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n >= l.total || l.active[ip] >= l.perPeer {
		return false
	}
	l.n++
	l.active[ip]++
	return true
}

func (l *limitListener) release(ip string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.n--
	if l.active[ip]--; l.active[ip] <= 0 {
		delete(l.active, ip)
	}
}

// logFDExhaustion logs running out of file descriptors at error level, at
// most once a second with the count since the last line: net/http retries
// Accept every few milliseconds meanwhile.
func (l *limitListener) logFDExhaustion(err error) {
	l.fdMu.Lock()
	defer l.fdMu.Unlock()
	l.fdSince++
	if now := time.Now(); now.Sub(l.fdLast) >= time.Second {
		l.log.Error("out of file descriptors: cannot accept connections (raise LimitNOFILE, or lower --max-conns)", "err", err, "failed_accepts", l.fdSince)
		l.fdLast, l.fdSince = now, 0
	}
}

func isFDExhaustion(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE)
}

type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// guessLimiter slows down token guessing: each key (a peer address, a
// token id) has free failures, after which every failure makes the next
// attempt wait twice as long as the one before, from base up to max. A
// success does not reset a peer (a guesser may hold one good token too);
// it resets a token. At most maxGuessKeys keys are tracked; beyond that
// new keys share one entry, so a flood of made-up token ids slows every
// unknown key down together instead of growing the map.
type guessLimiter struct {
	free      int
	base, max time.Duration

	mu      sync.Mutex
	entries map[string]*guessEntry
}

const maxGuessKeys = 1 << 16

type guessEntry struct {
	failures int
	until    time.Time // no attempt before
	last     time.Time
}

func newGuessLimiter(free int, base, max time.Duration) *guessLimiter {
	return &guessLimiter{free: free, base: base, max: max, entries: make(map[string]*guessEntry)}
}

// wait is how long key must still wait before its next attempt; 0: go.
func (g *guessLimiter) wait(key string, now time.Time) time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	e := g.entries[key]
	if e == nil {
		return 0
	}
	return max(0, e.until.Sub(now))
}

// fail counts a failed attempt of key at now.
func (g *guessLimiter) fail(key string, now time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	e := g.entries[key]
	if e == nil {
		if len(g.entries) >= maxGuessKeys {
			key = "*"
			e = g.entries[key]
		}
		if e == nil {
			e = &guessEntry{}
			g.entries[key] = e
		}
	}
	e.failures++
	e.last = now
	if over := e.failures - g.free; over > 0 {
		e.until = now.Add(backoffStep(g.base, g.max, over))
	}
}

// backoffStep is base * 2^(n-1), at most max.
func backoffStep(base, max time.Duration, n int) time.Duration {
	if n > 62 {
		return max
	}
	d := float64(base) * math.Pow(2, float64(n-1))
	if d >= float64(max) {
		return max
	}
	return time.Duration(d)
}

func (g *guessLimiter) reset(key string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.entries, key)
}

// sweep forgets keys that have not failed for twice the longest wait.
func (g *guessLimiter) sweep(now time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for k, e := range g.entries {
		if now.Sub(e.last) > 2*g.max {
			delete(g.entries, k)
		}
	}
}
