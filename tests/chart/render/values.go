// Values of a rendering, as helm 3 builds them: values.yaml deep-merged with -f files and --set
// arguments (typed like helm's strvals), then validated against values.schema.json.
package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/ghodss/yaml"
	"github.com/xeipuuv/gojsonschema"
)

// readYAMLMap reads a YAML mapping the way helm does (through JSON: numbers become float64).
func readYAMLMap(path string) (map[string]interface{}, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	m := map[string]interface{}{}
	if err := yaml.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if m == nil {
		m = map[string]interface{}{}
	}
	return m, nil
}

// mergeInto deep-merges src into dst: maps merge, anything else replaces, null deletes the key.
func mergeInto(dst, src map[string]interface{}) {
	for k, v := range src {
		if v == nil {
			delete(dst, k)
			continue
		}
		sm, sok := v.(map[string]interface{})
		dm, dok := dst[k].(map[string]interface{})
		if sok && dok {
			mergeInto(dm, sm)
		} else {
			dst[k] = v
		}
	}
}

func validateSchema(chartDir, chartName string, values map[string]interface{}) error {
	schema, err := os.ReadFile(filepath.Join(chartDir, "values.schema.json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	res, err := gojsonschema.Validate(gojsonschema.NewBytesLoader(schema), gojsonschema.NewGoLoader(values))
	if err != nil {
		return fmt.Errorf("values.schema.json: %w", err)
	}
	if res.Valid() {
		return nil
	}
	var b strings.Builder
	fmt.Fprintf(&b, "values don't meet the specifications of the schema(s) in the following chart(s):\n%s:\n", chartName)
	for _, e := range res.Errors() {
		fmt.Fprintf(&b, "- %s\n", e)
	}
	return errors.New(strings.TrimSuffix(b.String(), "\n"))
}

// applySet applies one --set argument: comma-separated key=value pairs, keys with dots and
// [index], values typed as helm does (true/false, null, integers not starting with 0, {a,b} lists).
func applySet(values map[string]interface{}, arg string) error {
	for _, pair := range splitTop(arg, ',') {
		key, val, ok := strings.Cut(pair, "=")
		if !ok || key == "" {
			return fmt.Errorf("key %q has no value", pair)
		}
		var v interface{}
		if strings.HasPrefix(val, "{") && strings.HasSuffix(val, "}") {
			list := []interface{}{}
			if inner := val[1 : len(val)-1]; inner != "" {
				for _, item := range splitTop(inner, ',') {
					list = append(list, typed(item))
				}
			}
			v = list
		} else {
			v = typed(val)
		}
		if err := setPath(values, splitTop(key, '.'), v); err != nil {
			return err
		}
	}
	return nil
}

// splitTop splits on sep outside braces, honouring backslash escapes.
func splitTop(s string, sep rune) []string {
	var parts []string
	var cur strings.Builder
	depth, escaped := 0, false
	for _, r := range s {
		switch {
		case escaped:
			cur.WriteRune(r)
			escaped = false
		case r == '\\':
			escaped = true
		case r == '{':
			depth++
			cur.WriteRune(r)
		case r == '}':
			depth--
			cur.WriteRune(r)
		case r == sep && depth == 0:
			parts = append(parts, cur.String())
			cur.Reset()
		default:
			cur.WriteRune(r)
		}
	}
	return append(parts, cur.String())
}

func typed(s string) interface{} {
	switch {
	case strings.EqualFold(s, "true"):
		return true
	case strings.EqualFold(s, "false"):
		return false
	case strings.EqualFold(s, "null"):
		return nil
	case s == "0":
		return int64(0)
	}
	if s != "" && s[0] != '0' {
		if n, err := strconv.ParseInt(s, 10, 64); err == nil {
			return n
		}
	}
	return s
}

var indexed = regexp.MustCompile(`^(.*)\[([0-9]+)\]$`)

func setPath(m map[string]interface{}, path []string, v interface{}) error {
	key := path[0]
	last := len(path) == 1
	if g := indexed.FindStringSubmatch(key); g != nil {
		i, _ := strconv.Atoi(g[2])
		list, _ := m[g[1]].([]interface{})
		for len(list) <= i {
			list = append(list, nil)
		}
		if last {
			list[i] = v
		} else {
			child, ok := list[i].(map[string]interface{})
			if !ok {
				child = map[string]interface{}{}
			}
			if err := setPath(child, path[1:], v); err != nil {
				return err
			}
			list[i] = child
		}
		m[g[1]] = list
		return nil
	}
	if last {
		if v == nil {
			delete(m, key)
		} else {
			m[key] = v
		}
		return nil
	}
	child, ok := m[key].(map[string]interface{})
	if !ok {
		child = map[string]interface{}{}
		m[key] = child
	}
	return setPath(child, path[1:], v)
}
