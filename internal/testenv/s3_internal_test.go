package testenv

import "testing"

func TestParseS3AccessLine(t *testing.T) {
	for name, c := range map[string]struct {
		line string
		want S3Request
		ok   bool
	}{
		"accepted put": {
			line: "AKIDA b [07/December/2026:19:54:31 +0000] 127.0.0.1 AKIDA RID s3_PutObject dir/k /b/dir/k 200 - 0 5 1 1 - Go-http-client/1.1 - HID SigV4 - AuthHeader s3.us-east-1.amazonaws.com - arn:aws:s3:::/b/dir/k Yes",
			want: S3Request{AccessKey: "AKIDA", Operation: "s3_PutObject", Bucket: "b", Key: "dir/k", Status: 200},
			ok:   true,
		},
		"anonymous refusal": {
			line: "- - [07/December/2026:19:54:31 +0000] 127.0.0.1 - RID ActionUnDetected - / 403 AccessDenied 0 0 0 0 - curl/7.88.1 - HID SigV4 - AuthHeader - - arn:aws:s3:::/ Yes",
			want: S3Request{Operation: "ActionUnDetected", Status: 403, ErrorCode: "AccessDenied"},
			ok:   true,
		},
		"key with a space": {
			line: "- b [07/December/2026:19:54:31 +0000] 127.0.0.1 AKIDA RID s3_PutObject a b /b/a%20b 200 - 0 0 0 0 - ua - HID SigV4 - AuthHeader - - arn Yes",
		},
		"short":   {line: "- b [07/December/2026:19:54:31 +0000] 127.0.0.1"},
		"no time": {line: "- b 07/December/2026:19:54:31 +0000 127.0.0.1 AKIDA RID s3_PutObject k /b/k 200 - 0 0 0 0"},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := parseS3AccessLine(c.line)
			if (err == nil) != c.ok {
				t.Fatalf("err = %v, want ok %v", err, c.ok)
			}
			if got != c.want {
				t.Fatalf("got %+v, want %+v", got, c.want)
			}
		})
	}
}
