#pragma once
/// \file
/// A kubeconfig file (what `kubectl` reads) as an api_config, for programs run outside the
/// cluster: the current context's cluster (server, certificate-authority[-data],
/// insecure-skip-tls-verify) and user (token, tokenFile, client-certificate[-data],
/// client-key[-data]). Relative paths are relative to the file's directory, as kubectl takes
/// them. Credential plugins (exec, auth-provider) and basic auth are refused with a line naming
/// the user, rather than connecting without credentials.
///
/// The file is YAML (or JSON). parse_kubeconfig_yaml() reads the block subset kubectl and kind
/// write: mappings, sequences ("- " items, also at their key's indentation), plain, single- and
/// double-quoted scalars, comments, and the empty flow forms {} and []. Anything else (block
/// scalars, anchors, non-empty flow collections) is an error naming the line.
///
/// Every function is thread-safe; load_kubeconfig() writes files (the -data fields) only under
/// the directory it is given.

#include <sys/stat.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "apiserver.hpp"
#include "gpuslice/result.hpp"

namespace gpuslice::kube {

namespace detail {

/// The member \p key of object \p j, or null.
inline const json* kc_member(const json& j, std::string_view key) {
  if (!j.is_object()) return nullptr;
  const auto it = j.find(key);
  return it == j.end() ? nullptr : &*it;
}

/// The string member \p key of \p j, or "" when absent or not a string.
inline std::string kc_string(const json& j, std::string_view key) {
  const json* v = kc_member(j, key);
  return v != nullptr && v->is_string() ? v->get<std::string>() : std::string();
}

/// One meaningful line of a YAML document: its indentation and its text without the comment.
struct yaml_line {
  std::size_t number = 0;  ///< 1-based line number in the file
  std::size_t indent = 0;  ///< leading spaces
  std::string text;        ///< the rest, trailing spaces and comment removed
};

/// \p s without a trailing " # comment" (a '#' inside quotes is kept) and trailing spaces.
inline std::string strip_yaml_comment(std::string_view s) {
  char quote = 0;
  std::size_t end = s.size();
  for (std::size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (quote != 0) {
      if (c == quote) quote = 0;
      continue;
    }
    if (c == '"' || c == '\'') {
      quote = c;
    } else if (c == '#' && (i == 0 || s[i - 1] == ' ' || s[i - 1] == '\t')) {
      end = i;
      break;
    }
  }
  while (end > 0 && (s[end - 1] == ' ' || s[end - 1] == '\t' || s[end - 1] == '\r')) --end;
  return std::string(s.substr(0, end));
}

/// The position of the ':' that ends a mapping key in \p s (outside quotes, followed by a space
/// or the end), or npos when \p s is not "key: value".
inline std::size_t yaml_key_colon(std::string_view s) {
  char quote = 0;
  for (std::size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (quote != 0) {
      if (c == quote) quote = 0;
      continue;
    }
    if ((c == '"' || c == '\'') && i == 0) {
      quote = c;
    } else if (c == ':' && (i + 1 == s.size() || s[i + 1] == ' ')) {
      return i;
    }
  }
  return std::string_view::npos;
}

/// Parses the block YAML subset of kubeconfig files. Not thread-safe per instance (one parse).
class yaml_subset {
 public:
  yaml_subset(std::vector<yaml_line> lines, std::string source)
      : lines_(std::move(lines)), source_(std::move(source)) {}

  result<json> document() {
    if (lines_.empty()) return json::object();
    auto v = block(lines_[0].indent);
    if (!v) return v;
    if (at_ < lines_.size()) return fail(lines_[at_], "unexpected indentation");
    return v;
  }

 private:
  error fail(const yaml_line& l, const std::string& why) const {
    return make_error(errc::invalid_value,
                      source_ + ":" + std::to_string(l.number) + ": " + why +
                          "; expected the YAML subset kubeconfig files use (mappings, "
                          "sequences, plain or quoted scalars)");
  }

  static bool is_item(const yaml_line& l) { return l.text == "-" || l.text.rfind("- ", 0) == 0; }

  /// The value starting at line at_ with indentation \p indent.
  result<json> block(std::size_t indent) {
    return is_item(lines_[at_]) ? sequence(indent) : mapping(indent);
  }

  result<json> sequence(std::size_t indent) {
    json out = json::array();
    while (at_ < lines_.size() && lines_[at_].indent == indent && is_item(lines_[at_])) {
      yaml_line& l = lines_[at_];
      if (l.text == "-") {
        ++at_;
        if (at_ >= lines_.size() || lines_[at_].indent <= indent) {
          out.push_back(nullptr);
          continue;
        }
        auto v = block(lines_[at_].indent);
        if (!v) return v;
        out.push_back(std::move(*v));
        continue;
      }
      // "- key: value" opens a mapping whose keys sit where "key" does.
      std::size_t skip = 2;
      while (skip < l.text.size() && l.text[skip] == ' ') ++skip;
      l.indent += skip;
      l.text.erase(0, skip);
      if (yaml_key_colon(l.text) == std::string_view::npos) {
        auto v = scalar(l, l.text);
        if (!v) return v;
        out.push_back(std::move(*v));
        ++at_;
        continue;
      }
      auto v = mapping(l.indent);
      if (!v) return v;
      out.push_back(std::move(*v));
    }
    return out;
  }

  result<json> mapping(std::size_t indent) {
    json out = json::object();
    while (at_ < lines_.size() && lines_[at_].indent == indent) {
      const yaml_line& l = lines_[at_];
      if (is_item(l)) return fail(l, "a sequence item where a mapping key was expected");
      const std::size_t colon = yaml_key_colon(l.text);
      if (colon == std::string_view::npos) return fail(l, "expected \"key: value\"");
      auto key = scalar(l, l.text.substr(0, colon));
      if (!key) return key;
      if (!key->is_string()) return fail(l, "expected a string key");
      std::string rest = colon + 1 < l.text.size() ? l.text.substr(colon + 1) : std::string();
      rest.erase(0, std::min(rest.size(), rest.find_first_not_of(' ')));
      const yaml_line& here = l;
      ++at_;
      json value;
      if (!rest.empty()) {
        auto v = scalar(here, rest);
        if (!v) return v;
        value = std::move(*v);
      } else if (at_ < lines_.size() && (lines_[at_].indent > indent ||
                                         (lines_[at_].indent == indent && is_item(lines_[at_])))) {
        auto v = block(lines_[at_].indent);
        if (!v) return v;
        value = std::move(*v);
      }
      out[key->get<std::string>()] = std::move(value);
    }
    return out;
  }

  result<json> scalar(const yaml_line& l, const std::string& s) const {
    if (s.empty()) return json(nullptr);
    if (s == "{}") return json::object();
    if (s == "[]") return json::array();
    const char c = s.front();
    if (c == '"' || c == '\'') {
      if (s.size() < 2 || s.back() != c) return fail(l, "an unterminated quoted string");
      std::string out;
      for (std::size_t i = 1; i + 1 < s.size(); ++i) {
        if (c == '\'' && s[i] == '\'' && i + 2 < s.size() && s[i + 1] == '\'') {
          out += '\'';
          ++i;
        } else if (c == '"' && s[i] == '\\' && i + 2 < s.size()) {
          const char e = s[++i];
          out += e == 'n' ? '\n' : e == 't' ? '\t' : e;
        } else {
          out += s[i];
        }
      }
      return json(out);
    }
    if (c == '|' || c == '>') return fail(l, "a block scalar (| or >)");
    if (c == '&' || c == '*' || c == '!') return fail(l, "an anchor, alias or tag");
    if (c == '{' || c == '[') return fail(l, "a flow collection other than {} or []");
    if (s == "true" || s == "True" || s == "TRUE") return json(true);
    if (s == "false" || s == "False" || s == "FALSE") return json(false);
    if (s == "null" || s == "~") return json(nullptr);
    return json(s);
  }

  std::vector<yaml_line> lines_;
  std::string source_;
  std::size_t at_ = 0;
};

/// Decodes standard base64 (padding optional, whitespace ignored); nullopt on another character.
inline std::optional<std::string> base64_decode(std::string_view in) {
  std::string out;
  std::uint32_t buf = 0;
  int bits = 0;
  for (const char c : in) {
    int v = -1;
    if (c >= 'A' && c <= 'Z') v = c - 'A';
    if (c >= 'a' && c <= 'z') v = c - 'a' + 26;
    if (c >= '0' && c <= '9') v = c - '0' + 52;
    if (c == '+') v = 62;
    if (c == '/') v = 63;
    if (c == '=' || c == '\n' || c == '\r' || c == ' ') continue;
    if (v < 0) return std::nullopt;
    buf = (buf << 6U) | static_cast<std::uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((buf >> static_cast<unsigned>(bits)) & 0xFFU);
    }
  }
  return out;
}

/// The entry of the kubeconfig list \p list (clusters, contexts, users) named \p name: its
/// \p field member (cluster, context, user), or null.
inline const json* named_entry(const json& doc, std::string_view list, const std::string& name,
                               std::string_view field) {
  const json* l = kc_member(doc, list);
  if (l == nullptr || !l->is_array()) return nullptr;
  for (const json& e : *l) {
    if (kc_string(e, "name") == name) {
      const json* f = kc_member(e, field);
      return f != nullptr && f->is_object() ? f : nullptr;
    }
  }
  return nullptr;
}

}  // namespace detail

/// Parses \p text, a kubeconfig in YAML (the subset above) or JSON; \p source names it in
/// errors. Pure, thread-safe.
inline result<json> parse_kubeconfig_yaml(std::string_view text, const std::string& source) {
  const auto first = text.find_first_not_of(" \t\r\n");
  if (first != std::string_view::npos && text[first] == '{') {
    json j = json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
      return make_error(errc::invalid_value, source + ": expected a JSON object");
    }
    return j;
  }
  std::vector<detail::yaml_line> lines;
  std::size_t number = 0;
  std::size_t at = 0;
  while (at <= text.size()) {
    const std::size_t nl = text.find('\n', at);
    const std::string_view raw =
        text.substr(at, nl == std::string_view::npos ? std::string_view::npos : nl - at);
    at = nl == std::string_view::npos ? text.size() + 1 : nl + 1;
    ++number;
    std::size_t indent = 0;
    while (indent < raw.size() && raw[indent] == ' ') ++indent;
    if (indent < raw.size() && raw[indent] == '\t') {
      return make_error(errc::invalid_value, source + ":" + std::to_string(number) +
                                                 ": a tab in the indentation; "
                                                 "expected spaces, as YAML demands");
    }
    std::string t = detail::strip_yaml_comment(raw.substr(indent));
    if (t.empty() || t == "---") continue;
    lines.push_back({number, indent, std::move(t)});
  }
  return detail::yaml_subset(std::move(lines), source).document();
}

/// The api_config of \p path's current context (or of \p context when not empty). Certificate
/// data embedded in the file (-data fields) is written to \p data_dir (created mode 0700 by the
/// caller; files mode 0600) because the HTTP client reads certificates from files. Errors name
/// the file and the field. Reads the file system only.
inline result<api_config> load_kubeconfig(const std::string& path, const std::string& data_dir,
                                          const std::string& context = {}) {
  std::ifstream f(path);
  if (!f) return make_error(errc::not_found, "kubeconfig " + path + ": cannot read the file");
  std::ostringstream ss;
  ss << f.rdbuf();
  auto doc = parse_kubeconfig_yaml(ss.str(), "kubeconfig " + path);
  if (!doc) return std::move(doc).err();
  const std::string where = "kubeconfig " + path + ": ";
  const std::string ctx_name =
      context.empty() ? detail::kc_string(*doc, "current-context") : context;
  if (ctx_name.empty()) {
    return make_error(errc::invalid_value, where + "current-context: expected a context name");
  }
  const json* ctx = detail::named_entry(*doc, "contexts", ctx_name, "context");
  if (ctx == nullptr) {
    return make_error(errc::not_found, where + "contexts: no context named \"" + ctx_name + "\"");
  }
  const std::string cluster_name = detail::kc_string(*ctx, "cluster");
  const std::string user_name = detail::kc_string(*ctx, "user");
  const json* cluster = detail::named_entry(*doc, "clusters", cluster_name, "cluster");
  if (cluster == nullptr) {
    return make_error(errc::not_found,
                      where + "clusters: no cluster named \"" + cluster_name + "\"");
  }
  const std::string dir = path.find('/') == std::string::npos
                              ? std::string(".")
                              : path.substr(0, path.rfind('/') == 0 ? 1 : path.rfind('/'));
  auto file_of = [&](const std::string& p) { return p.empty() || p[0] == '/' ? p : dir + "/" + p; };
  // A -data field written to data_dir/name, or the path field made absolute.
  auto material = [&](const json& obj, const std::string& field,
                      const std::string& name) -> result<std::string> {
    const std::string data = detail::kc_string(obj, field + "-data");
    if (data.empty()) return file_of(detail::kc_string(obj, field));
    auto bytes = detail::base64_decode(data);
    if (!bytes) {
      return make_error(errc::invalid_value, where + field + "-data: expected base64");
    }
    const std::string out = data_dir + "/" + name;
    {
      std::ofstream o(out, std::ios::binary | std::ios::trunc);
      if (!o || !(o << *bytes) || !o.flush()) {
        return make_error(errc::io_error, where + field + "-data: cannot write " + out);
      }
    }
    ::chmod(out.c_str(), S_IRUSR | S_IWUSR);
    return out;
  };

  auto cfg = config_from_url(detail::kc_string(*cluster, "server"));
  if (!cfg) return error{cfg.code(), where + "cluster " + cluster_name + ": " + cfg.message()};
  auto ca = material(*cluster, "certificate-authority", "ca.crt");
  if (!ca) return std::move(ca).err();
  cfg->ca_file = *ca;
  if (const json* skip = detail::kc_member(*cluster, "insecure-skip-tls-verify");
      skip != nullptr && skip->is_boolean()) {
    cfg->insecure_skip_tls_verify = skip->get<bool>();
  }
  if (user_name.empty()) return cfg;
  const json* user = detail::named_entry(*doc, "users", user_name, "user");
  if (user == nullptr) {
    return make_error(errc::not_found, where + "users: no user named \"" + user_name + "\"");
  }
  for (const char* plugin : {"exec", "auth-provider", "username", "password"}) {
    if (detail::kc_member(*user, plugin) != nullptr) {
      return make_error(errc::unsupported, where + "user " + user_name + ": " + plugin +
                                               " is not supported; expected token, tokenFile "
                                               "or client-certificate and client-key");
    }
  }
  cfg->token = detail::kc_string(*user, "token");
  cfg->token_file = file_of(detail::kc_string(*user, "tokenFile"));
  auto cert = material(*user, "client-certificate", "client.crt");
  if (!cert) return std::move(cert).err();
  auto key = material(*user, "client-key", "client.key");
  if (!key) return std::move(key).err();
  if (cert->empty() != key->empty()) {
    return make_error(errc::invalid_value, where + "user " + user_name +
                                               ": expected client-certificate and client-key "
                                               "together");
  }
  cfg->client_cert_file = *cert;
  cfg->client_key_file = *key;
  for (const std::string* file :
       {&cfg->ca_file, &cfg->token_file, &cfg->client_cert_file, &cfg->client_key_file}) {
    if (!file->empty() && !std::ifstream(*file)) {
      return make_error(errc::not_found, where + *file + ": cannot read the file");
    }
  }
  return cfg;
}

}  // namespace gpuslice::kube
