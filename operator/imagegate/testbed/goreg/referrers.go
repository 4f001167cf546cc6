package main

// OCI 1.1 referrers, as the distribution spec has them, on top of go-containerregistry's
// in-memory registry, which (v0.22.1) reports each referrer's artifactType from its config
// media type and ignores the `artifactType` query parameter.

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
)

type descriptor struct {
	MediaType    string            `json:"mediaType"`
	Size         int64             `json:"size"`
	Digest       string            `json:"digest"`
	ArtifactType string            `json:"artifactType,omitempty"`
	Annotations  map[string]string `json:"annotations,omitempty"`
}

type index struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Manifests     []descriptor `json:"manifests"`
}

type manifestHead struct {
	ArtifactType string `json:"artifactType"`
	Config       struct {
		MediaType string `json:"mediaType"`
	} `json:"config"`
}

// referrersHandler fixes each descriptor's artifactType (the manifest's own artifactType, else
// its config media type) and, when filter is true, applies the `artifactType` query parameter
// and says so with the OCI-Filters-Applied header. With filter false it behaves like registries
// that ignore the parameter, so clients can be tested on both.
func referrersHandler(inner http.Handler, filter bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		repo, _, isReferrers := splitReferrersPath(r.URL.Path)
		if !isReferrers || r.Method != http.MethodGet {
			inner.ServeHTTP(w, r)
			return
		}
		recorded := httptest.NewRecorder()
		inner.ServeHTTP(recorded, r)
		var result index
		if recorded.Code != http.StatusOK || json.Unmarshal(recorded.Body.Bytes(), &result) != nil {
			copyResponse(w, recorded)
			return
		}
		wanted := r.URL.Query().Get("artifactType")
		kept := []descriptor{}
		for _, d := range result.Manifests {
			d.ArtifactType = artifactTypeOf(inner, repo, d)
			if filter && wanted != "" && d.ArtifactType != wanted {
				continue
			}
			kept = append(kept, d)
		}
		result.Manifests = kept
		body, _ := json.Marshal(result)
		w.Header().Set("Content-Type", "application/vnd.oci.image.index.v1+json")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		if filter && wanted != "" {
			w.Header().Set("OCI-Filters-Applied", "artifactType")
		}
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(body)
	})
}

func artifactTypeOf(inner http.Handler, repo string, d descriptor) string {
	request := httptest.NewRequest(http.MethodGet, "/v2/"+repo+"/manifests/"+d.Digest, nil)
	request.Header.Set("Accept", d.MediaType)
	recorded := httptest.NewRecorder()
	inner.ServeHTTP(recorded, request)
	var head manifestHead
	if recorded.Code != http.StatusOK || json.Unmarshal(recorded.Body.Bytes(), &head) != nil {
		return d.ArtifactType
	}
	if head.ArtifactType != "" {
		return head.ArtifactType
	}
	return head.Config.MediaType
}

// splitReferrersPath recognises /v2/<repo>/referrers/<digest>.
func splitReferrersPath(path string) (repo, digest string, ok bool) {
	rest, found := strings.CutPrefix(path, "/v2/")
	if !found {
		return "", "", false
	}
	at := strings.LastIndex(rest, "/referrers/")
	if at <= 0 {
		return "", "", false
	}
	return rest[:at], rest[at+len("/referrers/"):], true
}

func copyResponse(w http.ResponseWriter, recorded *httptest.ResponseRecorder) {
	for name, values := range recorded.Header() {
		w.Header()[name] = values
	}
	w.WriteHeader(recorded.Code)
	_, _ = bytes.NewReader(recorded.Body.Bytes()).WriteTo(w)
}
