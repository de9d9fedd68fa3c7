//! Tables for people; JSON is printed with serde_json where used.

pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table { header: header.iter().map(|s| s.to_string()).collect(), rows: Vec::new() }
    }

    pub fn row(&mut self, r: Vec<String>) {
        self.rows.push(r);
    }

    /// The rows without the header line (`--no-legend`), aligned as with it.
    pub fn render_rows(&self) -> String {
        self.render().split_once('\n').map(|(_, rows)| rows.to_string()).unwrap_or_default()
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.len()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        for r in std::iter::once(&self.header).chain(&self.rows) {
            let line: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(i, c)| if i + 1 == r.len() { c.clone() } else { format!("{c:<w$}", w = widths[i]) })
                .collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
        }
        out
    }

    pub fn print(&self) {
        print!("{}", self.render());
    }
}

pub fn human_size(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

pub fn human_time(t: chrono::DateTime<chrono::Utc>) -> String {
    let ago = chrono::Utc::now().signed_duration_since(t);
    let s = ago.num_seconds();
    if s < 0 {
        t.to_rfc3339()
    } else if s < 60 {
        format!("{s} seconds ago")
    } else if s < 3600 {
        format!("{} minutes ago", s / 60)
    } else if s < 86400 {
        format!("{} hours ago", s / 3600)
    } else {
        format!("{} days ago", s / 86400)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(&["ID", "NAME"]);
        t.row(vec!["abc".into(), "x".into()]);
        t.row(vec!["a".into(), "long-name".into()]);
        assert_eq!(t.render(), "ID   NAME\nabc  x\na    long-name\n");
    }

    #[test]
    fn sizes() {
        assert_eq!(human_size(12), "12 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(50 * 1024 * 1024), "50.0 MiB");
    }
}
