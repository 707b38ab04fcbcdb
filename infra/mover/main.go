// refinery-mover moves files between local disk and Refinery's bucket, hashing them with sha256 as
// the bytes go by. It is the byte-moving half of storage/commit.ts: Node's HTTP receive path was
// the limit of downloads (0.66× s5cmd, docs/benchmarks.md §2) and an upload inside the worker
// process takes CPU from the training job next to it. Everything that makes a commit a commit —
// the manifest, the marker, fencing, resume decisions — stays in TypeScript; this program only
// moves the files it is given and reports what it moved and what it hashed.
//
// Protocol (storage/native-mover.ts is the one caller):
//
//	stdin:  one JSON request
//	        {"op":"get"|"put","files":[{"key","path","size","sha256"?}],"fileConcurrency":4,
//	         "partSize":16777216,"partsInFlight":8,"maxBytesPerSecond":0}
//	stdout: JSON lines
//	        {"event":"bytes","n":N}                       N bytes moved (and hashed) since the last one
//	        {"event":"file","key","size","sha256"}        a file is done (get: verified and renamed)
//	        {"event":"error","kind","key","message",...}  the first failure; the exit status is then 1
//	        {"event":"done","files","bytes"}              everything is done; exit status 0
//	stderr: human-readable errors
//
// Error kinds: "checksum" (get: the bytes do not hash to the request's sha256; "actual" and
// "expected"), "not-found" (get: no such object), "size" (get: the object's size is not the
// request's), "changed" (put: the file no longer hashes to the request's sha256), "local" (the
// local filesystem refused a read or write: "code" names the errno, e.g. ENOSPC — the disk's
// fault, not the object's), "aborted" (SIGTERM/SIGINT; exit status 143), "io" (anything else).
//
// Credentials and the endpoint come from the environment only (the names and defaults of
// storage/config.ts), never from argv, where any user of the machine could read them.
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

type fileReq struct {
	Key    string `json:"key"`
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	Sha256 string `json:"sha256,omitempty"`
}

type request struct {
	Op                string    `json:"op"`
	Files             []fileReq `json:"files"`
	FileConcurrency   int       `json:"fileConcurrency"`
	PartSize          int64     `json:"partSize"`
	PartsInFlight     int       `json:"partsInFlight"`
	MaxBytesPerSecond int64     `json:"maxBytesPerSecond"`
}

const (
	minPartSize = 5 << 20 // S3's smallest part (but the last)
	maxParts    = 10000   // S3's most parts per upload
	// Reads from the network or the disk go in chunks of this size: the rate limiter's grain.
	chunk = 1 << 20
	// User metadata under which an object's sha256 is recorded: x-amz-meta-sha256, as
	// ObjectStore.putFileHashed writes it and ObjectStore.head reads it back (resume).
	sha256Meta = "sha256"
)

// moveError is a failure with the kind the TypeScript side maps to a typed error.
type moveError struct {
	Kind     string
	Key      string
	Message  string
	Actual   string
	Expected string
	Code     string // kind "local": the errno's name
}

func (e *moveError) Error() string { return e.Message }

func fail(kind, key, format string, args ...any) *moveError {
	return &moveError{Kind: kind, Key: key, Message: fmt.Sprintf(format, args...)}
}

// errnoNames: the errors of a local filesystem worth naming (the caller decides what each means).
var errnoNames = map[syscall.Errno]string{
	syscall.ENOSPC: "ENOSPC", syscall.EDQUOT: "EDQUOT", syscall.EROFS: "EROFS", syscall.EIO: "EIO",
	syscall.EACCES: "EACCES", syscall.EPERM: "EPERM", syscall.ENOENT: "ENOENT", syscall.EMFILE: "EMFILE",
	syscall.ENFILE: "ENFILE", syscall.ENOTDIR: "ENOTDIR", syscall.EISDIR: "EISDIR",
}

// localFail: the local filesystem refused a read or write of path (kind "local", errno named).
func localFail(key, path string, err error) *moveError {
	me := &moveError{Kind: "local", Key: key, Message: fmt.Sprintf("%s: %v", path, err)}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		me.Code = errnoNames[errno]
	}
	return me
}

// --- events --------------------------------------------------------------------------------------

var (
	outMu sync.Mutex
	out   = json.NewEncoder(os.Stdout)
)

func emit(v map[string]any) {
	outMu.Lock()
	defer outMu.Unlock()
	_ = out.Encode(v) // a closed stdout (the caller went away) is not worth another error
}

// --- part buffers --------------------------------------------------------------------------------

// bufPool hands out at most `n` part buffers at a time, over all files: the memory of a transfer
// is partsInFlight × partSize whatever the files' sizes. Buffers are reused, not reallocated.
type bufPool struct {
	sem  chan struct{}
	mu   sync.Mutex
	free [][]byte
	size int64
}

func newBufPool(n int, size int64) *bufPool {
	return &bufPool{sem: make(chan struct{}, n), size: size}
}

// get waits for a free slot (or ctx); the buffer is at least `size` bytes (a part larger than the
// pool's size, for a file of more than maxParts parts, gets a buffer of its own).
func (p *bufPool) get(ctx context.Context, size int64) ([]byte, error) {
	select {
	case p.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if size > p.size {
		return make([]byte, size), nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := len(p.free); n > 0 {
		b := p.free[n-1]
		p.free = p.free[:n-1]
		return b, nil
	}
	return make([]byte, p.size), nil
}

func (p *bufPool) put(b []byte) {
	if int64(len(b)) == p.size {
		p.mu.Lock()
		p.free = append(p.free, b)
		p.mu.Unlock()
	}
	<-p.sem
}

// --- rate limit ----------------------------------------------------------------------------------

// limiter caps the bytes moved per second over the whole transfer (a background upload while a
// job trains). A virtual clock: each chunk reserves its share of time after the previous ones and
// waits until then, less a small burst allowance.
type limiter struct {
	mu   sync.Mutex
	rate float64 // bytes per second
	next time.Time
}

const burst = 50 * time.Millisecond

func (l *limiter) wait(ctx context.Context, n int) error {
	if l == nil {
		return ctx.Err()
	}
	l.mu.Lock()
	now := time.Now()
	if l.next.Before(now) {
		l.next = now
	}
	l.next = l.next.Add(time.Duration(float64(n) / l.rate * float64(time.Second)))
	until := l.next.Add(-burst)
	l.mu.Unlock()
	d := time.Until(until)
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// readFull fills buf from r in chunks, each paid to the limiter first.
func readFull(ctx context.Context, lim *limiter, r io.Reader, buf []byte) (int, error) {
	got := 0
	for got < len(buf) {
		n := min(chunk, len(buf)-got)
		if err := lim.wait(ctx, n); err != nil {
			return got, err
		}
		m, err := io.ReadFull(r, buf[got:got+n])
		got += m
		if err != nil {
			return got, err
		}
	}
	return got, nil
}

// --- the mover -----------------------------------------------------------------------------------

type mover struct {
	core   *minio.Core
	bucket string
	req    request
	pool   *bufPool      // put: part buffers
	gets   chan struct{} // get: ranged GETs in flight over all files
	lim    *limiter
	moved  atomic.Int64
}

func (m *mover) bytesDone(n int) {
	m.moved.Add(int64(n))
	emit(map[string]any{"event": "bytes", "n": n})
}

// partSizeFor: the request's part size, or larger for a file that would need more than maxParts.
func (m *mover) partSizeFor(size int64) int64 {
	ps := m.req.PartSize
	if size > ps*maxParts {
		ps = (size + maxParts - 1) / maxParts
	}
	return ps
}

// --- get -----------------------------------------------------------------------------------------

// get downloads one object into <path>.part-<pid> with parallel ranged GETs written at their
// offsets, hashes the parts in order as they arrive, and renames the file to its name only when
// its size and sha256 are the request's: a file that fails its check never appears.
func (m *mover) get(ctx context.Context, f fileReq) (string, error) {
	if err := os.MkdirAll(filepath.Dir(f.Path), 0o755); err != nil {
		return "", localFail(f.Key, f.Path, err)
	}
	tmp := fmt.Sprintf("%s.part-%d", f.Path, os.Getpid())
	// Read-write: the hasher reads each part back once it is written.
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_RDWR, 0o644)
	if err != nil {
		return "", localFail(f.Key, tmp, err)
	}
	digest, err := m.getInto(ctx, f, out)
	if cerr := out.Close(); err == nil && cerr != nil {
		err = localFail(f.Key, tmp, cerr)
	}
	if err == nil && f.Sha256 != "" && digest != f.Sha256 {
		err = &moveError{Kind: "checksum", Key: f.Key, Actual: digest, Expected: f.Sha256,
			Message: fmt.Sprintf("%s: sha256 %s does not match the expected %s", f.Key, digest, f.Sha256)}
	}
	if err == nil {
		if rerr := os.Rename(tmp, f.Path); rerr != nil {
			err = localFail(f.Key, f.Path, rerr)
		}
	}
	if err != nil {
		os.Remove(tmp)
		return "", err
	}
	return digest, nil
}

// getInto downloads f into out: ranged GETs in parallel, each streamed straight into its place in
// the file (a 1 MiB chunk buffer per GET, not a part buffer: at most getsInFlight GETs over all
// files), while a hasher per file reads the parts back in order as they complete — from the page
// cache, at memory speed — so the sha256 covers exactly the bytes on disk, in one pass behind the
// download. More GETs in flight than part buffers would allow is what the throughput needs.
func (m *mover) getInto(ctx context.Context, f fileReq, out *os.File) (string, error) {
	h := sha256.New()
	if f.Size == 0 {
		// No range of an empty object: one plain GET, which must bring no bytes.
		body, _, _, err := m.core.GetObject(ctx, m.bucket, f.Key, minio.GetObjectOptions{})
		if err != nil {
			return "", s3Fail(f.Key, err)
		}
		defer body.Close()
		n, err := io.Copy(io.MultiWriter(h, out), io.LimitReader(body, 1<<20))
		if err != nil {
			return "", s3Fail(f.Key, err)
		}
		if n != 0 {
			return "", fail("size", f.Key, "%s: the object has bytes, the request says it is empty", f.Key)
		}
		return hex.EncodeToString(h.Sum(nil)), nil
	}
	ps := m.partSizeFor(f.Size)
	nparts := int((f.Size + ps - 1) / ps)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var firstErr error
	var errOnce sync.Once
	setErr := func(err error) {
		errOnce.Do(func() { firstErr = err })
		cancel()
	}
	// Every part's channel receives exactly one value: whether the part is on disk, whole.
	written := make([]chan bool, nparts)
	for i := range written {
		written[i] = make(chan bool, 1)
	}
	var etag string // every part after the first must come from the same object version
	fetch := func(i int) bool {
		off := int64(i) * ps
		n := min(ps, f.Size-off)
		opts := minio.GetObjectOptions{}
		if err := opts.SetRange(off, off+n-1); err != nil {
			setErr(fail("io", f.Key, "%v", err))
			return false
		}
		if i > 0 {
			_ = opts.SetMatchETag(etag)
		}
		body, info, hdr, err := m.core.GetObject(ctx, m.bucket, f.Key, opts)
		if err != nil {
			setErr(s3Fail(f.Key, err))
			return false
		}
		defer body.Close()
		if i == 0 {
			etag = info.ETag
			// bytes 0-N/TOTAL: the object's size, known before its other parts are asked for.
			cr := hdr.Get("Content-Range")
			if total, err := strconv.ParseInt(cr[strings.LastIndexByte(cr, '/')+1:], 10, 64); err != nil || total != f.Size {
				setErr(fail("size", f.Key, "%s: the object is %s bytes, the request says %d", f.Key, cr[strings.LastIndexByte(cr, '/')+1:], f.Size))
				return false
			}
		}
		buf := chunkPool.Get().(*[]byte)
		defer chunkPool.Put(buf)
		for done := int64(0); done < n; {
			want := int(min(int64(len(*buf)), n-done))
			got, err := readFull(ctx, m.lim, body, (*buf)[:want])
			if err != nil {
				setErr(s3Fail(f.Key, err))
				return false
			}
			if _, err := out.WriteAt((*buf)[:got], off+done); err != nil {
				setErr(localFail(f.Key, out.Name(), err))
				return false
			}
			done += int64(got)
		}
		return true
	}

	// The hasher: parts in order, each read back from the file once it is written.
	hashed := make(chan struct{})
	go func() {
		defer close(hashed)
		buf := make([]byte, 4<<20)
		for i := 0; i < nparts; i++ {
			if ok := <-written[i]; !ok || ctx.Err() != nil {
				continue // after a failure (which cancels ctx) nothing more is hashed
			}
			off := int64(i) * ps
			n := min(ps, f.Size-off)
			for done := int64(0); done < n; {
				k := int(min(int64(len(buf)), n-done))
				got, err := out.ReadAt(buf[:k], off+done)
				if err != nil && !(errors.Is(err, io.EOF) && got == k) {
					setErr(localFail(f.Key, out.Name(), err))
					break
				}
				h.Write(buf[:got])
				done += int64(got)
			}
			m.bytesDone(int(n))
		}
	}()

	var wg sync.WaitGroup
	for i := 0; i < nparts; i++ {
		if ctx.Err() != nil {
			written[i] <- false
			continue
		}
		if i == 0 {
			// The first part alone: its answer gives the ETag and size the others are checked against.
			written[0] <- fetch(0)
			continue
		}
		select {
		case m.gets <- struct{}{}:
		case <-ctx.Done():
			written[i] <- false
			continue
		}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			defer func() { <-m.gets }()
			written[i] <- fetch(i)
		}(i)
	}
	wg.Wait()
	<-hashed
	if firstErr != nil {
		return "", firstErr
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// chunkPool: the buffer each GET streams through (chunk bytes: the rate limiter's grain).
var chunkPool = sync.Pool{New: func() any { b := make([]byte, chunk); return &b }}

// s3Fail maps a store error to its kind.
func s3Fail(key string, err error) error {
	var me *moveError
	if errors.As(err, &me) {
		return me
	}
	if errors.Is(err, context.Canceled) {
		return err
	}
	code := minio.ToErrorResponse(err).Code
	switch code {
	case "NoSuchKey", "NoSuchBucket", "NotFound":
		return fail("not-found", key, "%s: not found (%s)", key, code)
	case "InvalidRange":
		return fail("size", key, "%s: the object is smaller than the request says", key)
	case "PreconditionFailed":
		return fail("io", key, "%s: the object changed during the download", key)
	}
	return fail("io", key, "%s: %v", key, err)
}

// --- put -----------------------------------------------------------------------------------------

// put uploads one file, reading it once and hashing it as it is read: one signed PUT for a small
// file (signed with the very sha256 that goes into the manifest, which the server checks), parts
// in parallel as UNSIGNED-PAYLOAD for a large one (its integrity is the manifest's sha256, which
// every download and `audit verify` check end to end) — as ObjectStore.putFileHashed does.
func (m *mover) put(ctx context.Context, f fileReq) (int64, string, error) {
	in, err := os.Open(f.Path)
	if err != nil {
		return 0, "", localFail(f.Key, f.Path, err)
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return 0, "", localFail(f.Key, f.Path, err)
	}
	size := st.Size()
	if size <= m.req.PartSize {
		digest, err := m.putSmall(ctx, f, in, size)
		return size, digest, err
	}
	digest, err := m.putLarge(ctx, f, in, size)
	return size, digest, err
}

func changed(f fileReq, actual string) error {
	return &moveError{Kind: "changed", Key: f.Key, Actual: actual, Expected: f.Sha256,
		Message: fmt.Sprintf("%s: changed while committing (sha256 %s, was %s when first read)", f.Path, actual, f.Sha256)}
}

func (m *mover) putSmall(ctx context.Context, f fileReq, in *os.File, size int64) (string, error) {
	buf, err := m.pool.get(ctx, size)
	if err != nil {
		return "", err
	}
	defer m.pool.put(buf)
	n, err := readFull(ctx, m.lim, in, buf[:size])
	if err != nil {
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		return "", fail("io", f.Key, "%s: changed while uploading (read %d of %d bytes: %v)", f.Path, n, size, err)
	}
	sum := sha256.Sum256(buf[:n])
	digest := hex.EncodeToString(sum[:])
	if f.Sha256 != "" && digest != f.Sha256 {
		return "", changed(f, digest)
	}
	// DisableContentSha256 + the hash: a plain signed PUT whose payload hash is ours (minio-go
	// would otherwise use its chunked streaming signature and hash every chunk again).
	_, err = m.core.PutObject(ctx, m.bucket, f.Key, bytes.NewReader(buf[:n]), int64(n), "", digest, minio.PutObjectOptions{
		UserMetadata:         map[string]string{sha256Meta: digest},
		DisableContentSha256: true,
	})
	if err != nil {
		return "", s3Fail(f.Key, err)
	}
	m.bytesDone(n)
	return digest, nil
}

func (m *mover) putLarge(ctx context.Context, f fileReq, in *os.File, size int64) (string, error) {
	// The hash goes along as metadata only when it is known before the upload starts (the caller
	// hashed the file already): then a later resume recognises the object by its HEAD.
	opts := minio.PutObjectOptions{}
	if f.Sha256 != "" {
		opts.UserMetadata = map[string]string{sha256Meta: f.Sha256}
	}
	uploadID, err := m.core.NewMultipartUpload(ctx, m.bucket, f.Key, opts)
	if err != nil {
		return "", s3Fail(f.Key, err)
	}
	digest, err := m.putParts(ctx, f, in, size, uploadID)
	if err != nil {
		// Never leave a half upload behind: on a failure, a changed file or a signal (the root
		// context is cancelled then, hence a fresh one).
		actx, acancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer acancel()
		if aerr := m.core.AbortMultipartUpload(actx, m.bucket, f.Key, uploadID); aerr != nil {
			fmt.Fprintf(os.Stderr, "refinery-mover: %s: cannot abort upload %s: %v\n", f.Key, uploadID, aerr)
		}
		return "", err
	}
	return digest, nil
}

func (m *mover) putParts(ctx context.Context, f fileReq, in *os.File, size int64, uploadID string) (string, error) {
	ps := m.partSizeFor(size)
	nparts := int((size + ps - 1) / ps)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var firstErr error
	var errOnce sync.Once
	setErr := func(err error) {
		errOnce.Do(func() { firstErr = err })
		cancel()
	}
	var h hash.Hash = sha256.New()
	parts := make([]minio.CompletePart, nparts)
	var wg sync.WaitGroup
	for i := 0; i < nparts && ctx.Err() == nil; i++ {
		off := int64(i) * ps
		n := min(ps, size-off)
		buf, err := m.pool.get(ctx, n)
		if err != nil {
			break
		}
		got, err := readFull(ctx, m.lim, io.NewSectionReader(in, off, n), buf[:n])
		if err != nil {
			m.pool.put(buf)
			if ctx.Err() == nil {
				setErr(fail("io", f.Key, "%s: changed while uploading (short read at %d: %v)", f.Path, off+int64(got), err))
			}
			break
		}
		h.Write(buf[:got])
		wg.Add(1)
		go func(i int, buf []byte, n int) {
			defer wg.Done()
			defer m.pool.put(buf)
			p, err := m.core.PutObjectPart(ctx, m.bucket, f.Key, uploadID, i+1, bytes.NewReader(buf[:n]), int64(n),
				minio.PutObjectPartOptions{DisableContentSha256: true})
			if err != nil {
				setErr(s3Fail(f.Key, err))
				return
			}
			parts[i] = minio.CompletePart{PartNumber: i + 1, ETag: p.ETag}
			m.bytesDone(n)
		}(i, buf, got)
	}
	wg.Wait()
	if firstErr != nil {
		return "", firstErr
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}
	digest := hex.EncodeToString(h.Sum(nil))
	if f.Sha256 != "" && digest != f.Sha256 {
		return "", changed(f, digest)
	}
	sort.Slice(parts, func(a, b int) bool { return parts[a].PartNumber < parts[b].PartNumber })
	if _, err := m.core.CompleteMultipartUpload(ctx, m.bucket, f.Key, uploadID, parts, minio.PutObjectOptions{}); err != nil {
		return "", s3Fail(f.Key, err)
	}
	return digest, nil
}

// --- main ----------------------------------------------------------------------------------------

func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func newCore() (*minio.Core, string, error) {
	raw := env("REFINERY_S3_ENDPOINT", "http://127.0.0.1:9000")
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return nil, "", fmt.Errorf("REFINERY_S3_ENDPOINT=%q is not a URL: expected e.g. http://127.0.0.1:9000", raw)
	}
	secure := u.Scheme == "https"
	tr, err := minio.DefaultTransport(secure)
	if err != nil {
		return nil, "", err
	}
	tr.Proxy = nil
	tr.MaxIdleConnsPerHost = 64
	// Larger socket buffers than net/http's 4 KiB: fewer syscalls per byte on the receive path.
	tr.ReadBufferSize = 256 << 10
	tr.WriteBufferSize = 256 << 10
	core, err := minio.NewCore(u.Host, &minio.Options{
		Creds:     credentials.NewStaticV4(env("REFINERY_S3_ACCESS_KEY", "minioadmin"), env("REFINERY_S3_SECRET_KEY", "minioadmin"), ""),
		Secure:    secure,
		Region:    env("REFINERY_S3_REGION", "us-east-1"),
		Transport: tr,
	})
	return core, env("REFINERY_BUCKET", "refinery"), err
}

func errorEvent(err error, key string) map[string]any {
	var me *moveError
	if !errors.As(err, &me) {
		me = &moveError{Kind: "io", Key: key, Message: err.Error()}
	}
	ev := map[string]any{"event": "error", "kind": me.Kind, "key": me.Key, "message": me.Message}
	if me.Actual != "" || me.Expected != "" {
		ev["actual"], ev["expected"] = me.Actual, me.Expected
	}
	if me.Code != "" {
		ev["code"] = me.Code
	}
	return ev
}

func die(err error) {
	emit(errorEvent(err, ""))
	fmt.Fprintf(os.Stderr, "refinery-mover: %v\n", err)
	os.Exit(2)
}

func main() {
	var req request
	dec := json.NewDecoder(os.Stdin)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		die(fmt.Errorf("bad request on stdin: %v", err))
	}
	if req.Op != "get" && req.Op != "put" {
		die(fmt.Errorf("bad request: op %q (get or put)", req.Op))
	}
	for _, f := range req.Files {
		if f.Key == "" || !filepath.IsAbs(f.Path) {
			die(fmt.Errorf("bad request: every file needs a key and an absolute path (%q, %q)", f.Key, f.Path))
		}
	}
	if req.FileConcurrency <= 0 {
		req.FileConcurrency = 4
	}
	if req.PartSize <= 0 {
		req.PartSize = 16 << 20
	}
	req.PartSize = max(req.PartSize, minPartSize)
	if req.PartsInFlight <= 0 {
		req.PartsInFlight = 8
	}
	core, bucket, err := newCore()
	if err != nil {
		die(err)
	}
	// GETs hold no part buffer (getInto): twice as many in flight as parts going up, at least 16.
	m := &mover{core: core, bucket: bucket, req: req, pool: newBufPool(req.PartsInFlight, req.PartSize), gets: make(chan struct{}, max(2*req.PartsInFlight, 16))}
	if req.MaxBytesPerSecond > 0 {
		m.lim = &limiter{rate: float64(req.MaxBytesPerSecond)}
	}

	// SIGTERM/SIGINT cancel everything: in-flight multipart uploads are aborted, temp files removed.
	ctx, cancel := context.WithCancel(context.Background())
	var signalled atomic.Bool
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sigs
		signalled.Store(true)
		cancel()
	}()

	// fileConcurrency workers over the files in order; the first failure stops the rest (in-flight
	// ones are cancelled and cleaned up) and is the one reported.
	var (
		next     atomic.Int64
		firstErr error
		errKey   string
		errOnce  sync.Once
		wg       sync.WaitGroup
		files    atomic.Int64
	)
	for w := 0; w < min(req.FileConcurrency, max(1, len(req.Files))); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= len(req.Files) {
					return
				}
				f := req.Files[i]
				var size int64
				var digest string
				var err error
				if req.Op == "get" {
					size = f.Size
					digest, err = m.get(ctx, f)
				} else {
					size, digest, err = m.put(ctx, f)
				}
				if err != nil {
					errOnce.Do(func() { firstErr, errKey = err, f.Key })
					cancel()
					return
				}
				files.Add(1)
				emit(map[string]any{"event": "file", "key": f.Key, "size": size, "sha256": digest})
			}
		}()
	}
	wg.Wait()
	if signalled.Load() {
		emit(map[string]any{"event": "error", "kind": "aborted", "key": "", "message": "stopped by a signal"})
		fmt.Fprintln(os.Stderr, "refinery-mover: stopped by a signal")
		os.Exit(143)
	}
	if firstErr != nil {
		emit(errorEvent(firstErr, errKey))
		fmt.Fprintf(os.Stderr, "refinery-mover: %v\n", firstErr)
		os.Exit(1)
	}
	emit(map[string]any{"event": "done", "files": files.Load(), "bytes": m.moved.Load()})
}
