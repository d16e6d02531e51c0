// Command render renders a Helm chart without helm: the part of `helm template` that the
// streamjob-operator chart uses, built offline from Debian's Go packages (build-renderer.sh).
//
//	render [--name NAME] [--namespace NS] [-f VALUES.yaml]... [--set a.b=c,d=e]... [--notes] CHART_DIR
//
// Implemented as in helm 3: values.yaml deep-merged with each -f file then each --set (typed like
// helm's strvals; null deletes a key), validated against values.schema.json; .Values, .Release,
// .Chart, .Files.Get/GetBytes, .Template; sprig (without env/expandenv), include, tpl, required,
// toYaml, fromYaml, fromYamlArray, toJson, fromJson, fromJsonArray; missing keys render empty.
// Every file under templates/ except _* partials and NOTES.txt is rendered, split into documents,
// empty ones dropped, each checked to be YAML with apiVersion and kind, sorted by helm's install
// order of kinds, and printed with a `# Source: CHART/templates/FILE` line. --notes prints the
// rendered NOTES.txt instead. Not implemented: .Capabilities, lookup, subcharts, hooks.
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// listFlag collects the values of a repeatable flag (-f, --set).
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, " ") }

func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// Files gives templates the chart's non-template files, as helm's .Files does.
type Files map[string][]byte

// Get returns a file's content as a string ("" when absent).
func (f Files) Get(name string) string { return string(f[name]) }

// GetBytes returns a file's content as bytes (nil when absent).
func (f Files) GetBytes(name string) []byte { return f[name] }

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	var valueFiles, sets listFlag
	var name, namespace string
	var notes bool
	fs := newFlagSet(&valueFiles, &sets, &name, &namespace, &notes)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New("usage: render [--name NAME] [--namespace NS] [-f FILE]... [--set K=V]... [--notes] CHART_DIR")
	}
	chartDir := fs.Arg(0)

	chart, err := readYAMLMap(filepath.Join(chartDir, "Chart.yaml"))
	if err != nil {
		return err
	}
	chartName, _ := chart["name"].(string)
	if chartName == "" {
		return errors.New("Chart.yaml has no name")
	}
	values, err := readYAMLMap(filepath.Join(chartDir, "values.yaml"))
	if err != nil {
		return err
	}
	for _, f := range valueFiles {
		override, err := readYAMLMap(f)
		if err != nil {
			return err
		}
		mergeInto(values, override)
	}
	for _, s := range sets {
		if err := applySet(values, s); err != nil {
			return fmt.Errorf("--set %s: %w", s, err)
		}
	}
	if err := validateSchema(chartDir, chartName, values); err != nil {
		return err
	}

	files, templates, err := readChartFiles(chartDir, chartName)
	if err != nil {
		return err
	}
	top := map[string]interface{}{
		"Values": values,
		"Release": map[string]interface{}{
			"Name": name, "Namespace": namespace, "Service": "Helm",
			"IsInstall": true, "IsUpgrade": false, "Revision": 1,
		},
		"Chart": map[string]interface{}{
			"Name": chartName, "Version": chart["version"], "AppVersion": chart["appVersion"],
			"Description": chart["description"], "Type": chart["type"], "APIVersion": chart["apiVersion"],
		},
		"Files": files,
	}
	t, err := parseTemplates(chartName, templates)
	if err != nil {
		return err
	}
	names := make([]string, 0, len(templates))
	for n := range templates {
		names = append(names, n)
	}
	sort.Strings(names)

	if notes {
		n := chartName + "/templates/NOTES.txt"
		if _, ok := templates[n]; !ok {
			return errors.New("the chart has no templates/NOTES.txt")
		}
		out, err := execute(t, n, top, chartName)
		if err != nil {
			return err
		}
		fmt.Println(strings.TrimSpace(out))
		return nil
	}

	var docs []doc
	for _, n := range names {
		base := filepath.Base(n)
		if strings.HasPrefix(base, "_") || base == "NOTES.txt" {
			continue
		}
		out, err := execute(t, n, top, chartName)
		if err != nil {
			return err
		}
		split, err := splitDocs(n, out)
		if err != nil {
			return err
		}
		docs = append(docs, split...)
	}
	sort.SliceStable(docs, func(i, j int) bool { return kindLess(docs[i].kind, docs[j].kind) })
	var buf bytes.Buffer
	for _, d := range docs {
		fmt.Fprintf(&buf, "---\n# Source: %s\n%s\n", d.source, d.text)
	}
	_, err = os.Stdout.Write(buf.Bytes())
	return err
}

func newFlagSet(valueFiles, sets *listFlag, name, namespace *string, notes *bool) *flag.FlagSet {
	fs := flag.NewFlagSet("render", flag.ContinueOnError)
	fs.Var(valueFiles, "f", "values file (repeatable)")
	fs.Var(valueFiles, "values", "values file (repeatable)")
	fs.Var(sets, "set", "set values: a.b=c,d[0]=e (repeatable)")
	fs.StringVar(name, "name", "streamjob", "release name")
	fs.StringVar(namespace, "namespace", "default", "release namespace")
	fs.BoolVar(notes, "notes", false, "print the rendered NOTES.txt instead of the manifests")
	return fs
}

// readChartFiles returns the chart's non-template files (.Files) and its templates by helm name.
func readChartFiles(chartDir, chartName string) (Files, map[string]string, error) {
	files := Files{}
	templates := map[string]string{}
	err := filepath.Walk(chartDir, func(path string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		rel, err := filepath.Rel(chartDir, path)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if strings.HasPrefix(rel, "templates/") {
			templates[chartName+"/"+rel] = string(data)
		} else if rel != "Chart.yaml" && rel != "values.yaml" && rel != "values.schema.json" {
			files[rel] = data
		}
		return nil
	})
	return files, templates, err
}
