// The chart renderer of tests/chart (render CHART_DIR without helm). It builds offline in GOPATH
// mode against Debian's Go packages, which have no module cache or proxy behind them:
//   GO111MODULE=off GOPATH=/usr/share/gocode go build   (tests/chart/build-renderer.sh does this)
// so this file only names the module and the Go version; the dependencies are the Debian packages
// golang-github-masterminds-sprig-dev (3.2.3), golang-github-ghodss-yaml-dev and
// golang-github-xeipuuv-gojsonschema-dev (the JSON-schema library helm 3 uses).
module streamjob.io/tests/chart/render

go 1.19
