import ij.IJ;
import ij.ImagePlus;
import ij.ImageStack;
import ij.measure.Calibration;
import ij.process.ColorProcessor;
import ij.process.FloatProcessor;
import ij.process.ImageProcessor;
import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.PrintStream;

/**
 * Opens each TIFF given as an argument with ImageJ 1.x (IJ.openImage, headless) and prints
 * one line per file: "PROBE", then tab-separated key=value fields, or an error field.
 *
 * Run without compiling (Java 11+ source launcher; Debian's JRE has the compiler module):
 *   java -Djava.awt.headless=true -cp /usr/share/java/ij.jar tests/ImageJProbe.java FILE...
 *
 * ImageJ's own "-batch macro" mode cannot be used: in ImageJ 1.53t (Debian's ij.jar) the
 * macro open() builds the menu bar first, which throws HeadlessException headless, and
 * java still exits with status 0.
 */
public class ImageJProbe {
    public static void main(String[] args) throws Exception {
        PrintStream out = new PrintStream(new FileOutputStream(FileDescriptor.out), true, "UTF-8");
        for (String path : args) {
            ImagePlus imp = IJ.openImage(path);
            if (imp == null) {
                out.println("PROBE\tpath=" + path + "\terror=ImageJ could not open the file");
                continue;
            }
            Calibration cal = imp.getCalibration();
            StringBuilder line = new StringBuilder("PROBE\tpath=" + path);
            line.append("\twidth=").append(imp.getWidth());
            line.append("\theight=").append(imp.getHeight());
            line.append("\tchannels=").append(imp.getNChannels());
            line.append("\tslices=").append(imp.getNSlices());
            line.append("\tframes=").append(imp.getNFrames());
            line.append("\tstack_size=").append(imp.getStackSize());
            line.append("\tbit_depth=").append(imp.getBitDepth());
            line.append("\tunit=").append(cal.getUnits()); // as the macro getPixelSize()
            line.append("\tpixel_width=").append(cal.pixelWidth);
            line.append("\tpixel_height=").append(cal.pixelHeight);
            line.append("\tpixel_depth=").append(cal.pixelDepth);
            ImageStack stack = imp.getStack();
            for (int i = 1; i <= stack.getSize(); i++) {
                line.append("\tsum").append(i).append('=').append(sum(stack.getProcessor(i)));
            }
            out.println(line);
            imp.close();
        }
    }

    /** Exact sum of one slice: integers as long, floats as double; RGB as "r,g,b". */
    static String sum(ImageProcessor ip) {
        int n = ip.getPixelCount();
        if (ip instanceof ColorProcessor) {
            long r = 0, g = 0, b = 0;
            for (int c : (int[]) ip.getPixels()) {
                r += (c >> 16) & 0xff;
                g += (c >> 8) & 0xff;
                b += c & 0xff;
            }
            return r + "," + g + "," + b;
        }
        if (ip instanceof FloatProcessor) {
            double s = 0;
            for (int i = 0; i < n; i++) s += ip.getf(i);
            return Double.toString(s);
        }
        long s = 0;
        for (int i = 0; i < n; i++) s += ip.get(i);
        return Long.toString(s);
    }
}
