// The gallery: an infinite-scroll grid of thumbnails, newest first, with the contract's filters;
// each image can be starred, put on a board and deleted.
import { create } from "@bufbuild/protobuf";
import { FieldMaskSchema } from "@bufbuild/protobuf/wkt";
import { useCallback, useEffect, useRef, useState } from "react";
import { type Image, ImageSchema } from "@pingvas/sdk/gen/pingvas/gallery/v1/gallery_resources_pb.js";
import { client } from "../api";
import { ErrorNotice } from "../errors";

const PAGE_SIZE = 12;

interface Filters {
  model: string;
  board: string;
  starredOnly: boolean;
  promptQuery: string;
}

export function Gallery() {
  const [filters, setFilters] = useState<Filters>({ model: "", board: "", starredOnly: false, promptQuery: "" });
  const [images, setImages] = useState<Image[]>([]);
  const [nextPage, setNextPage] = useState<string | undefined>("");
  const [loading, setLoading] = useState(false);
  const [error, setError] = useState<unknown>();
  const sentinel = useRef<HTMLDivElement>(null);
  const generation = useRef(0); // a page fetched for older filters is dropped

  const loadMore = useCallback(() => {
    if (loading || nextPage === undefined) return;
    const asked = generation.current;
    setLoading(true);
    client
      .call((options) => client.galleryService.listImages({ pageSize: PAGE_SIZE, pageToken: nextPage, ...filters }, options))
      .then(
        (page) => {
          if (asked !== generation.current) return;
          setImages((before) => [...before, ...page.images]);
          setNextPage(page.nextPageToken || undefined);
        },
        setError,
      )
      .finally(() => asked === generation.current && setLoading(false));
  }, [filters, loading, nextPage]);

  useEffect(() => {
    const target = sentinel.current;
    if (!target) return;
    const observer = new IntersectionObserver((entries) => entries.some((e) => e.isIntersecting) && loadMore());
    observer.observe(target);
    return () => observer.disconnect();
  }, [loadMore]);

  const applyFilters = (next: Filters) => {
    generation.current += 1;
    setLoading(false);
    setFilters(next);
    setImages([]);
    setNextPage("");
  };

  const update = (image: Image, change: Partial<Pick<Image, "starred" | "board">>) => {
    const paths = Object.keys(change);
    client
      .call((options) =>
        client.galleryService.updateImage(
          { imageId: image.id, image: create(ImageSchema, change), updateMask: create(FieldMaskSchema, { paths }) },
          options,
        ),
      )
      .then((updated) => setImages((all) => all.map((i) => (i.id === updated.id ? updated : i))), setError);
  };
  const remove = (image: Image) => {
    client
      .call((options) => client.galleryService.deleteImage({ imageId: image.id }, options))
      .then(() => setImages((all) => all.filter((i) => i.id !== image.id)), setError);
  };

  return (
    <div className="stack">
      <h1>Gallery</h1>
      <form
        className="row"
        aria-label="Filters"
        onSubmit={(e) => {
          e.preventDefault();
          const data = new FormData(e.currentTarget);
          applyFilters({
            model: String(data.get("model") ?? ""),
            board: String(data.get("board") ?? ""),
            promptQuery: String(data.get("promptQuery") ?? ""),
            starredOnly: data.get("starredOnly") === "on",
          });
        }}
      >
        <input name="promptQuery" placeholder="Search prompts" aria-label="Search prompts" />
        <input name="model" placeholder="Model" aria-label="Model" />
        <input name="board" placeholder="Board" aria-label="Board" />
        <label>
          <span>
            <input name="starredOnly" type="checkbox" /> Starred only
          </span>
        </label>
        <button type="submit">Filter</button>
      </form>
      <ErrorNotice error={error} navigate={() => undefined} />
      <div className="grid" data-count={images.length}>
        {images.map((image) => (
          <div className="tile" key={image.id} data-image-id={image.id} data-starred={image.starred}>
            <img alt={image.prompt} src={image.thumbnailUrl || image.url} loading="lazy" />
            <small>{image.prompt}</small>
            <div className="actions">
              <button
                className="secondary"
                aria-label={image.starred ? "Unstar" : "Star"}
                onClick={() => update(image, { starred: !image.starred })}
              >
                {image.starred ? "★" : "☆"}
              </button>
              <input
                aria-label="Board"
                defaultValue={image.board}
                placeholder="board"
                onKeyDown={(e) => e.key === "Enter" && update(image, { board: e.currentTarget.value })}
              />
              <button className="danger" aria-label="Delete" onClick={() => remove(image)}>
                ✕
              </button>
            </div>
          </div>
        ))}
      </div>
      <div ref={sentinel} data-testid="more">
        {loading ? "Loading…" : nextPage === undefined ? (images.length ? "That is all." : "No images yet.") : ""}
      </div>
    </div>
  );
}
